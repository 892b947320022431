def pytest_configure(config):
    config.addinivalue_line("markers", "peers: compares saekit with the real SAELens, sparsify and "
                                       "dictionary_learning in their own virtual environment")
