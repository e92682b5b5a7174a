// Command foreman runs and drives foreman: a queue in front of one Ollama server.
package main

import "os"

func main() {
	os.Exit(execute(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}
