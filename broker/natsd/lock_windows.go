//go:build windows

package natsd

import (
	"os"

	"golang.org/x/sys/windows"
)

// lockedAt is the offset of the byte lockFile locks: far past the file's content (the
// PID, at offset 0). Windows' byte-range locks are mandatory, so a lock on the content
// would fail every other reader of the file (`type foreman.lock`); one past its end,
// which Windows allows, keeps it readable, as flock does on unix.
func lockedAt() *windows.Overlapped {
	return &windows.Overlapped{Offset: 0xFFFFFFFF, OffsetHigh: 0x7FFFFFFF}
}

// lockFile takes an exclusive lock without waiting, as flock's LOCK_EX|LOCK_NB does on
// unix: a second foreman on the same data dir fails at once. Windows releases the lock
// when the handle is closed, so a killed foreman leaves none.
func lockFile(f *os.File) error {
	return windows.LockFileEx(windows.Handle(f.Fd()),
		windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, lockedAt())
}

func unlockFile(f *os.File) {
	_ = windows.UnlockFileEx(windows.Handle(f.Fd()), 0, 1, 0, lockedAt())
}
