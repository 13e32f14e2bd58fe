"""The trade-off lab: each claim of the design guide as a two-arm experiment.

``experiment.py`` says what an experiment is (arms, metrics, sizes, how to conclude) and holds
the pure statistics and phrasing; ``harness.py`` gives an arm a real embedded topology and
the measuring tools; ``runner.py`` alternates the arms and writes ``result.json``; ``page.py``
draws the HTML; ``commands.py`` is ``chatscale lab``. Each experiment is one small module in
``experiments/`` listed in ``experiments/__init__.py``.
"""
