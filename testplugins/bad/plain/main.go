// Command plain is an ordinary program, not a plugin: it prints a greeting
// and exits 0.
package main

import "fmt"

func main() { fmt.Println("hello from an ordinary program") }
