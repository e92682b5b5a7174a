//go:build unix

package main

import (
	"os"
	"os/signal"
	"syscall"
)

// releaseSignal is the signal that lets held calls go: SIGUSR1.
func releaseSignal() (<-chan os.Signal, error) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1)
	return c, nil
}
