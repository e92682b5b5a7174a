package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// ANSI sequences of the live view.
const (
	ansiHome       = "\x1b[H"
	ansiClearBelow = "\x1b[J"
	ansiClearLine  = "\x1b[K"
	ansiHideCursor = "\x1b[?25l"
	ansiShowCursor = "\x1b[?25h"
	ansiAltScreen  = "\x1b[?1049h"
	ansiMainScreen = "\x1b[?1049l"
)

// liveTop redraws the view in place every interval until q (or Ctrl-C) is pressed or ctx
// ends. With stdin a terminal it reads keys in raw mode, restored on the way out.
func liveTop(ctx context.Context, e *env, out io.Writer, c *client.Client, f *clientFlags, interval time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	refresh := liveRefresh(f)
	defer cancel()
	if in, ok := e.stdin.(*os.File); ok && term.IsTerminal(int(in.Fd())) {
		old, err := term.MakeRaw(int(in.Fd()))
		if err == nil {
			defer func() { _ = term.Restore(int(in.Fd()), old) }()
			// The reader ends with the process: a blocked read of the terminal cannot be
			// interrupted portably, and nothing else reads stdin after top.
			go readQuitKey(in, cancel)
		}
	}
	_, _ = io.WriteString(out, ansiAltScreen+ansiHideCursor)
	defer func() { _, _ = io.WriteString(out, ansiShowCursor+ansiMainScreen) }()

	draw := func(snap *topSnapshot, err error) error {
		width, height := 0, 0
		if fd, ok := out.(*os.File); ok {
			if w, h, err := term.GetSize(int(fd.Fd())); err == nil {
				width, height = w, max(h-2, 1) // the frame, then a blank line and "(q quits)"
			}
		}
		// Raw mode turns off the terminal's \n to \r\n; each line also clears its rest.
		text := strings.ReplaceAll(liveFrame(e, c.ShownURL(), refresh, snap, err, width, height), "\n", ansiClearLine+"\r\n")
		_, err = io.WriteString(out, ansiHome+text+ansiClearLine+ansiClearBelow)
		return err
	}
	// Until the first answer, a frame that says whom top waits for: the screen stayed
	// blank for up to a whole refresh (10 s) against a foreman that did not answer.
	if err := draw(nil, nil); err != nil {
		return err
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		fetchCtx, stop := context.WithTimeout(ctx, refresh.timeout)
		snap, err := fetchTop(fetchCtx, c)
		stop()
		if ctx.Err() != nil {
			return nil
		}
		if err := draw(snap, err); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// liveRefresh is f for one refresh of the live view: each waits at most refreshTimeout
// (--timeout, when shorter), so a hung foreman shows as an error line that the next
// refresh may clear. The line names the bound that ended the refresh: the view's own,
// not a --timeout that was not given.
func liveRefresh(f *clientFlags) *clientFlags {
	refresh := *f
	if refresh.timeout <= 0 || refresh.timeout > refreshTimeout {
		refresh.timeout = refreshTimeout
		refresh.timeoutBy = fmt.Sprintf("each refresh of the live view waits at most %s; a shorter --timeout sets less", refreshTimeout)
	}
	return &refresh
}

// refreshTimeout bounds one refresh of the live view.
const refreshTimeout = 10 * time.Second

// liveFrame is the text of one live frame: the snapshot, or the error the refresh met
// instead (neither: top waits for the first answer), then "(q quits)", in width columns
// and height lines when they are > 0 (a
// terminal). A line longer than the terminal would wrap, scroll the frame up and leave
// the next one drawn from the wrong row: the snapshot's lines are cut, the error, the
// frame's one content, is wrapped at spaces to be read whole.
func liveFrame(e *env, url string, f *clientFlags, snap *topSnapshot, err error, width, height int) string {
	var frame bytes.Buffer
	if err != nil || snap == nil {
		title := "foreman " + url + "   " + e.clock().Format("15:04:05")
		msg := fmt.Sprintf("waiting for the first answer from %s (at most %s)…", url, f.timeout)
		if err != nil {
			msg = f.explain(e, err).Error()
		}
		lines := []string{msg}
		if width > 0 {
			title, lines = fitWidth(title, width), wrapWidth(lines[0], width)
		}
		if room := max(height-2, 1); height > 0 && len(lines) > room {
			lines = append(lines[:room-1], fitWidth(lines[room-1]+" …", width))
		}
		frame.WriteString(title + "\n\n" + strings.Join(lines, "\n") + "\n")
	} else {
		_ = renderTop(&frame, snap, snap.at(e.clock()), url, width, height)
	}
	frame.WriteString("\n(q quits)")
	return frame.String()
}

// readQuitKey calls quit when q, Q, Ctrl-C or Ctrl-D is read, or stdin ends.
func readQuitKey(in io.Reader, quit func()) {
	buf := make([]byte, 16)
	for {
		n, err := in.Read(buf)
		for _, k := range buf[:n] {
			if k == 'q' || k == 'Q' || k == 3 || k == 4 {
				quit()
				return
			}
		}
		if err != nil {
			quit()
			return
		}
	}
}
