package brokertest

import (
	"bufio"
	"net"
	"strings"
	"testing"
)

// SilentNATS is a NATS server that answers a client's handshake and then nothing more: a
// NATS that froze after the client connected (a paused VM, a wedged node). It takes one
// connection. seen is closed at the first protocol line the client sends that begins
// with one of verbs ("SUB ", "PUB ", "HPUB "...), so a test knows the client now waits
// on it.
func SilentNATS(t testing.TB, verbs ...string) (url string, seen <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := c.Write([]byte(`INFO {"server_id":"silent","version":"2.12.0","proto":1,"headers":true,"jetstream":true,"max_payload":1048576}` + "\r\n")); err != nil {
			return
		}
		r := bufio.NewReader(c)
		ponged, told := false, false
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch {
			case strings.HasPrefix(line, "PING") && !ponged:
				ponged = true // the handshake's; every later PING goes unanswered
				if _, err := c.Write([]byte("PONG\r\n")); err != nil {
					return
				}
			case !told && startsWithAny(line, verbs):
				told = true
				close(ch)
			}
		}
	}()
	return "nats://" + ln.Addr().String(), ch
}

func startsWithAny(line string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(line, p) {
			return true
		}
	}
	return false
}
