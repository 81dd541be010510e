"""pyramidflow: pyramidal flow matching for video generation.

The maths lives in :mod:`pyramidflow.pyramid` (pure tensor functions, one time convention:
sigma = 1 is noise, sigma = 0 is data). Models, training, pipelines and the command line build
on it, in that order.
"""

__version__ = "0.1.0"
