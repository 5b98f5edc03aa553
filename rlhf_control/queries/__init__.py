"""Which pairs to ask about and how many: selectors and label schedules."""
