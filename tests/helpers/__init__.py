"""What several test modules share (the test modules themselves import nothing from each other)."""
