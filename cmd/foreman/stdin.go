package main

import (
	"bufio"
	"context"
	"errors"
	"io"
)

// errInterrupted ends a command whose read of stdin a Ctrl-C (or SIGTERM) cut short.
var errInterrupted = errors.New("interrupted")

// readAll reads r (stdin) to its end, or until ctx ends: foreman catches SIGINT and
// SIGTERM to end the command's context, and a read of a terminal, or of a pipe whose
// writer does not close it, goes on through them. A command reading its prompt from a
// terminal (`foreman submit -m MODEL` without one) then ignored Ctrl-C, twice, until the
// third ended the process. The read stays in the background until the process exits:
// it cannot be interrupted portably, and nothing else reads stdin after it.
func readAll(ctx context.Context, r io.Reader) ([]byte, error) {
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := io.ReadAll(r)
		done <- result{data, err}
	}()
	select {
	case res := <-done:
		return res.data, res.err
	case <-ctx.Done():
		return nil, errInterrupted
	}
}

// lineReader yields stdin's lines one at a time, each read ended by its context as
// readAll's is (an interactive chat waiting at its prompt).
type lineReader struct {
	lines chan string
	err   error // once lines is closed: why the input ended (nil at its end)
	stop  chan struct{}
}

// newLineReader reads r's lines of up to max bytes in the background, each after the one
// before was taken. Close it when done.
func newLineReader(r io.Reader, max int) *lineReader {
	lr := &lineReader{lines: make(chan string), stop: make(chan struct{})}
	go func() {
		defer close(lr.lines)
		in := bufio.NewScanner(r)
		in.Buffer(make([]byte, 64<<10), max)
		for in.Scan() {
			select {
			case lr.lines <- in.Text():
			case <-lr.stop:
				return
			}
		}
		lr.err = in.Err()
	}()
	return lr
}

// next returns the next line; ok is false at the input's end (err says why, nil at its
// end) or when ctx ended (err is errInterrupted).
func (lr *lineReader) next(ctx context.Context) (line string, ok bool, err error) {
	select {
	case line, ok := <-lr.lines:
		if !ok {
			return "", false, lr.err
		}
		return line, true, nil
	case <-ctx.Done():
		return "", false, errInterrupted
	}
}

// close lets the background read end at its next line.
func (lr *lineReader) close() { close(lr.stop) }
