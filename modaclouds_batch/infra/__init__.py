"""The infrastructure management API's domain: see, drain and extend the pool."""
