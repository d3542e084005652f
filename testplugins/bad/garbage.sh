#!/bin/sh
# Prints garbage where a handshake belongs, and leaves a child holding its
# stdout and stderr open, as careless wrapper scripts do.
echo "this is not a handshake"
sleep 317
