"""checkout: the saga that turns a checkout into a confirmed order, or compensates."""
