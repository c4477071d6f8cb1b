"""Personalization (lesson 13): local fine-tuning, FedPer, FedRep and Ditto.

A thin facade: the code lives in `fedutils.techniques.personalization`.
"""
from fedutils.techniques.personalization import (LocalSGD, Personalized, evaluate_personalized,
                                                 local_finetune, run_ditto, run_fedper,
                                                 run_fedrep)

__all__ = ["local_finetune", "run_fedper", "run_fedrep", "run_ditto", "evaluate_personalized",
           "Personalized", "LocalSGD"]
