"""Who is asking: merchant keys, tracking tokens, customer sign-in and sessions."""
