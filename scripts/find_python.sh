#!/usr/bin/env sh
# Prints the path of a Python 3.9, 3.10 or 3.11 interpreter, or explains why none will do.
# TensorFlow Federated 0.87 (the newest release) supports exactly these versions:
# it requires Python >=3.9,<3.12 and TensorFlow 2.14.
# With --modern (the Keras 3 environment without TFF): Python 3.12 like Colab, else 3.10-3.11.
# With --colab (`make test-colab`): Python 3.12 only, Colab's version.
if [ "${1:-}" = "--colab" ]; then
    pyenv_312=$(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)
    for candidate in python3.12 $pyenv_312; do
        path=$(command -v "$candidate" 2>/dev/null) || continue
        if "$path" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            echo "$path"
            exit 0
        fi
    done
    echo "No Python 3.12 (Colab's version) found for make test-colab; install Python 3.12." >&2
    exit 1
fi
if [ "${1:-}" = "--modern" ]; then
    pyenv_312=$(ls -d "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)
    for candidate in python3.12 $pyenv_312 python3.11 python3.10; do
        path=$(command -v "$candidate" 2>/dev/null) || continue
        if "$path" -c 'import sys, venv; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
            echo "$path"
            exit 0
        fi
    done
    echo "No Python 3.10-3.12 found for the Keras 3 environment; install Python 3.12." >&2
    exit 1
fi
for candidate in "${PYTHON:-}" python3.11 python3.10 python3.9 python3 python; do
    [ -n "$candidate" ] || continue
    path=$(command -v "$candidate" 2>/dev/null) || continue
    if "$path" -c 'import sys, venv; sys.exit(not ((3, 9) <= sys.version_info[:2] <= (3, 11)))' 2>/dev/null; then
        echo "$path"
        exit 0
    fi
done
cat >&2 <<'MSG'
No Python 3.9, 3.10 or 3.11 (with the venv module) was found on PATH.

The course needs one of them because TensorFlow Federated 0.87, the newest release, supports
only Python >=3.9,<3.12 (it is built against TensorFlow 2.14). Python 3.12 and newer will not do.
Install Python 3.11, for example:
  - Debian/Ubuntu:  sudo apt-get install python3.11 python3.11-venv
  - macOS:          brew install python@3.11
  - pyenv:          pyenv install 3.11 && pyenv local 3.11
  - conda:          conda env create -f environment.yml   (see README, "Without make")
then run the make command again, or point at it: make PYTHON=/path/to/python3.11 lab
MSG
exit 1
