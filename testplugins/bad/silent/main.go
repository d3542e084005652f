// Command silent never answers: it sleeps without printing a handshake.
package main

import "time"

func main() { time.Sleep(time.Hour) }
