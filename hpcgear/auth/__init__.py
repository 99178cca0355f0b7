"""Who is acting: the OS account of the process, or the owner of an API key."""
