"""cart: each logged-in user's cart (add, remove, change quantity) and checkout."""
