//go:build !linux && !darwin

package natsd

// diskFree is not read here: the server chooses its limit itself.
func diskFree(string) (int64, bool) { return 0, false }
