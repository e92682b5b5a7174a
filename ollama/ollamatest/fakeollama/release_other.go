//go:build !unix

package main

import (
	"errors"
	"os"
)

// releaseSignal is SIGUSR1 on unix; elsewhere there is none, and -hold is refused rather
// than holding calls for good.
func releaseSignal() (<-chan os.Signal, error) {
	return nil, errors.New("needs SIGUSR1, which only unix systems have")
}
