"""Engine wrappers around the stage functions of ``i2e_engine``: Beam now, Spark later."""
