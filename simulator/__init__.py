"""edgesim — a Lync Server 2013 / Skype for Business Edge pool lab.

Layers, each importing only the ones below it (``make lint`` checks this with import-linter, see
``[tool.importlinter]`` in pyproject.toml)::

    cli        the edgesim command: every argument parser, nothing else imports it
    report     report model and renderers
    scenario   probes, runner, load engine
    lab        address plan, port map, PKI, the embedded lab that runs a scenario's sides
    net        asyncio shells: transport/, nat/, clients/, then edge/ and peers/ (independent of each other)
    spec       the scenario schema and loader, the 38-rule catalog
    outcome    verdicts, reasons, outcomes
    core       sans-I/O state machines
    wire       sans-I/O codecs
"""

__version__ = "0.1.0"
