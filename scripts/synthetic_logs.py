"""Write a synthetic data set of gateway log records in the real spool layout (see `synthetic`)."""

from synthetic.dataset import main

if __name__ == "__main__":
    main()
