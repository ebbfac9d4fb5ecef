"""payments: charges and refunds through a fake gateway with switchable behaviour."""
