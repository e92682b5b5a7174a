//go:build !unix

package ollamatest

// lockFile is a no-op where flock is not available: end-to-end tests then must not run
// in parallel packages (go test -p 1).
func lockFile(string) (unlock func(), err error) { return func() {}, nil }
