//go:build !unix

package ollamatest

import (
	"net"
	"testing"
)

// ReserveAddr returns a loopback "host:port" nothing listens on. Here the port is only
// free, not held: a listener started meanwhile may take it.
func ReserveAddr(t testing.TB) (addr string, free func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = ln.Addr().String()
	ln.Close()
	return addr, func() {}
}
