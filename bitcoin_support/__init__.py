"""bitcoin_support: secure memory and tracked libevent handles for Python and C hosts."""
