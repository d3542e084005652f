// Command exitearly dies during the handshake: it reads the go-plugin
// environment, complains on stderr and exits 3 before printing anything.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "exitearly: cannot open my model file, giving up")
	os.Exit(3)
}
