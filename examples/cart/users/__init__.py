"""users: registration (email checked, password hashed with scrypt) and log-in sessions."""
