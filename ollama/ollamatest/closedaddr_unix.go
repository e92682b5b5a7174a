//go:build unix

package ollamatest

import (
	"fmt"
	"sync"
	"syscall"
	"testing"
)

// ReserveAddr returns a loopback "host:port" that refuses every connection until free
// is called, and that no other listener can take meanwhile: a socket is bound to it and
// never listens (a connection to it is refused), without SO_REUSEADDR (a listener's bind
// of the port fails, and one of port 0 is never given it). A port taken by listening on
// port 0 and closing again was free for any listener started meanwhile, by a test of
// this package or of another one running at once: a call meant to be refused was then
// answered. After free, a test may listen on the port itself.
func ReserveAddr(t testing.TB) (addr string, free func()) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatalf("ollamatest: a socket for a closed address: %v", err)
	}
	syscall.CloseOnExec(fd)
	var once sync.Once
	free = func() { once.Do(func() { _ = syscall.Close(fd) }) }
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		free()
		t.Fatalf("ollamatest: bind a closed address: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	in4, ok := sa.(*syscall.SockaddrInet4)
	if err != nil || !ok {
		free()
		t.Fatalf("ollamatest: the closed address's port: %v %T", err, sa)
	}
	return fmt.Sprintf("127.0.0.1:%d", in4.Port), free
}
