"""notifications: the emails the shop would send, recorded instead of sent."""
