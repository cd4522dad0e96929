"""The cache contract: format (``store``), dataset index (``sources``), view plan (``views``), codecs,
claims for concurrent writers, and ``audit`` (info, verify, repair). No torch, no timm: any process
can read and check a cache."""
