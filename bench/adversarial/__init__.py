"""The adversarial corpus of issue 16: policies (``policies/*.yaml``), inputs (``inputs.py``)
and the driver both ``bench/adversarial.py`` and ``tests/test_adversarial_corpus.py`` use
(``corpus.py``). See README.md."""
