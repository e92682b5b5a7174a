package client_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// silentNATS is a NATS server that answers a client's handshake and then nothing more:
// a NATS that froze after the client connected. subscribed is closed when a SUB comes.
func silentNATS(t *testing.T) (url string, subscribed <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	sub := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := c.Write([]byte(`INFO {"server_id":"silent","version":"2.12.0","proto":1,"headers":true,"max_payload":1048576}` + "\r\n")); err != nil {
			return
		}
		r := bufio.NewReader(c)
		ponged, subSeen := false, false
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
			case strings.HasPrefix(line, "SUB ") && !subSeen:
				subSeen = true
				close(sub)
			}
		}
	}()
	return "nats://" + ln.Addr().String(), sub
}

// A Wait whose NATS stopped answering ends with its caller's context: the subscription's
// flush, which waits for the server's answer, held it up to nats.go's own 10 s bound for a
// flush, past a cancel or a deadline of the caller's.
func TestWaitOnASilentNATSEndsWithItsContext(t *testing.T) {
	t.Parallel()
	web := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(web.Close)
	natsURL, subscribed := silentNATS(t)
	c, err := client.New(web.URL, client.WithNATSURL(natsURL))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.Wait(ctx, "01JBXJ2Q7ZP1M4Y9VQ8R0S6T3W")
		done <- err
	}()
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("the client never subscribed")
	}
	cancel()
	// Far less than nats.go's 10 s flush bound, and far more than a canceled Wait takes.
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Wait after its cancel: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not end with its context: held by the subscription's flush")
	}
}
