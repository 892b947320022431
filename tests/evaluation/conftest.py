def pytest_configure(config):
    config.addinivalue_line("markers", "peers: compares saekit with a real peer package (here sae-probes) in its "
                                       "own virtual environment")
