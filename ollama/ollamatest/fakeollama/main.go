// Command fakeollama serves the fake Ollama of package ollamatest on a loopback port, for
// whole-process measurements (`foreman bench submit`, deploy/bench/fsyncs.sh) that need a
// target answering at once. It prints its URL on the first line of stdout and serves until
// SIGINT or SIGTERM; -addr fixes its address (so it can be stopped and started again where
// foreman expects it). With -hold, chat and generate calls wait, before their first byte,
// until the process gets SIGUSR1: foreman's worker then stays on one job while jobs queue.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

func main() {
	tokens := flag.Int("tokens", 5, "tokens per reply (unless the request asks fewer)")
	delay := flag.Duration("token-delay", 0, "time between tokens (on a clock of their own: writing one does not delay the next)")
	hold := flag.Bool("hold", false, "hold chat/generate calls until SIGUSR1")
	addr := flag.String("addr", "", "listen on this address (default a random loopback port)")
	flag.Parse()

	s := ollamatest.NewServer(ollamatest.Config{Tokens: *tokens, TokenDelay: *delay, Addr: *addr})
	defer s.Close()
	release := func() {}
	var usr1 <-chan os.Signal
	if *hold {
		var err error
		if usr1, err = releaseSignal(); err != nil {
			fmt.Fprintln(os.Stderr, "fakeollama: -hold:", err)
			os.Exit(2)
		}
		release = s.Hold("")
	}
	fmt.Println(s.URL)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	for {
		select {
		case <-usr1:
			release()
		case <-stop:
			return
		}
	}
}
