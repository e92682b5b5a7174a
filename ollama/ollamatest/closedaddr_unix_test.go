//go:build unix

package ollamatest_test

import (
	"errors"
	"net"
	"syscall"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A closed address refuses a connection, and no listener can take its port while the
// test runs: a listener of another test could otherwise answer in its place.
func TestClosedAddrRefusesAndKeepsItsPort(t *testing.T) {
	t.Parallel()
	addr, free := ollamatest.ReserveAddr(t)
	if c, err := net.Dial("tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial %s: %v, want connection refused", addr, err)
	}
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		t.Fatalf("a listener took the closed address %s", addr)
	}
	free()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s once freed: %v", addr, err)
	}
	ln.Close()
}
