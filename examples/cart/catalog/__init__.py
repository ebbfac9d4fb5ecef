"""catalog: products with price and stock; reserves and releases stock for orders."""
