"""edgesim — a Lync Server 2013 / Skype for Business Edge pool lab."""

__version__ = "0.1.0"
