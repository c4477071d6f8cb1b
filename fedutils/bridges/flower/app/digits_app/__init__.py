"""The course's digits model and fedutils' client training, packaged as a Flower app."""
