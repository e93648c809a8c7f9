"""Who is calling, what they may do, how much, and the record of what they did."""
