package natsd

import "time"

// SetRecoverGrace sets recoverGrace until the test ends (by the returned restore).
func SetRecoverGrace(d time.Duration) (restore func()) {
	old := recoverGrace
	recoverGrace = d
	return func() { recoverGrace = old }
}
