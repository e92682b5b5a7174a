package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// A third SIGINT or SIGTERM ends the process at once, whatever its shutdown, cut short by
// the second, still waits on (a store's disk that stalls, a part that does not heed its
// context): the watch kept catching signals after the second, and Ctrl-C did nothing
// more, so an operator had to find the process and kill -9 it.
func TestThirdStopEndsTheProcess(t *testing.T) {
	if os.Getenv("FOREMAN_TEST_INTERRUPTS_CHILD") == "1" {
		interruptsChild()
		return
	}
	t.Parallel()
	thirdSIGINTEndsChild(t, exec.Command(os.Args[0], "-test.run=^TestThirdStopEndsTheProcess$"))
}

// A foreman started with SIGINT ignored (a script's `foreman serve &`; go tool test2json
// starts test binaries so) catches the first two all the same, and is ended by the third
// too: letting the signal's default action go gave it back its ignore, and it ran on.
func TestThirdStopEndsAProcessStartedWithSIGINTIgnored(t *testing.T) {
	t.Parallel()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh to start the child with SIGINT ignored:", err)
	}
	// trap "" INT ignores SIGINT, and an ignored signal stays ignored across exec.
	thirdSIGINTEndsChild(t, exec.Command(sh, "-c", `trap "" INT; exec "$0" "$@"`, os.Args[0], "-test.run=^TestThirdStopEndsTheProcess$"))
}

// thirdSIGINTEndsChild starts cmd, this test binary as interruptsChild, sends it a
// SIGINT as it says it has seen each one before, and wants the third to end it with
// status 130, as a kill by SIGINT shows in a shell.
func thirdSIGINTEndsChild(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Env = append(os.Environ(), "FOREMAN_TEST_INTERRUPTS_CHILD=1")
	stdin, err := cmd.StdinPipe() // held open: the child's stuck shutdown reads it
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child := reapChild(t, cmd)
	lines := bufio.NewScanner(stdout)
	// Each signal is sent once the child has seen the one before: two sent at once may
	// arrive as one.
	for _, step := range []string{"watching", "stopping", "stopping now"} {
		said := false
		for !said && lines.Scan() {
			said = lines.Text() == step
		}
		if !said {
			t.Fatalf("the child never said %q: %v", step, lines.Err())
		}
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-child.exited:
	case <-time.After(time.Minute): // a bound only: the third signal ends it at once
		t.Fatal("the child still runs a minute after its third SIGINT")
	}
	var ee *exec.ExitError
	if !errors.As(child.err, &ee) || ee.ExitCode() != 128+int(syscall.SIGINT) {
		t.Fatalf("child: %v, want it ended with status 130, as by SIGINT", child.err)
	}
}

// interruptsChild watches for interrupts as run does, says what it has seen, and after
// the second waits on its standard input, as a shutdown that hangs.
func interruptsChild() {
	ctx, now, _, stop := interrupts(context.Background())
	defer stop()
	fmt.Println("watching")
	<-ctx.Done()
	fmt.Println("stopping")
	<-now
	fmt.Println("stopping now")
	_, _ = io.Copy(io.Discard, os.Stdin)
}
