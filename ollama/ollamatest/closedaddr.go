package ollamatest

import "testing"

// ClosedAddr returns a loopback "host:port" that refuses every connection for the rest
// of t: an Ollama (or NATS server) that is off. The port stays taken for the test's
// whole life where the platform allows it (see ReserveAddr), so no listener of another
// test running meanwhile can take it and answer in its place.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	addr, free := ReserveAddr(t)
	t.Cleanup(free)
	return addr
}
