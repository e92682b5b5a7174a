//go:build unix

package natsd

import (
	"os"
	"runtime"
	"syscall"
)

var isDarwin = runtime.GOOS == "darwin"

func lockFile(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
}

func unlockFile(f *os.File) { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
