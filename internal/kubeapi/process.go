package kubeapi

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// process is a child process running in its own process group, with its
// stdout and stderr appended to a log file.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has exited
	err     error         // the result of Wait, set before done is closed
}

func startProcess(name, logPath, binary string, args []string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening %s log: %w", name, err)
	}
	// The child holds its own copy of the descriptor.
	defer logFile.Close()

	cmd := exec.Command(binary, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own group, so that Stop can signal everything it started and a
		// terminal's Ctrl-C reaches only the parent, which then stops it.
		Setpgid: true,
		// If the parent dies without stopping it (go test's timeout panic,
		// SIGKILL), the kernel kills the child rather than leaking it.
		Pdeathsig: syscall.SIGKILL,
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	started := make(chan error)
	go func() {
		// Pdeathsig fires when the thread that forked the child exits, not
		// the process. Go may end a thread (when a goroutine exits while
		// locked to it), so the child is started from a thread locked to
		// this goroutine, which lives as long as the child does.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	return p, nil
}

// exited reports whether the process has exited, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM to the process group, waits up to grace for the process
// to exit, then kills the group.
func (p *process) stop(grace time.Duration) {
	if exited, _ := p.exited(); exited {
		// Its group is gone, and its ID may since have been reused.
		return
	}
	pgid := p.cmd.Process.Pid // Setpgid made the child its group's leader.
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return
	case <-timer.C:
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
}

// failure describes an unexpected exit or startup failure, with the end of
// the process's log.
func (p *process) failure(err error) error {
	tail := logTail(p.logPath, 40)
	if strings.Contains(tail, "address already in use") {
		err = fmt.Errorf("%w: %w", errPortInUse, err)
	}
	return fmt.Errorf("%s: %w\n--- last lines of %s ---\n%s", p.name, err, p.logPath, tail)
}

// logTail returns the last n lines of the file at path.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(reading log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

var (
	// errExited is returned when a process exits while it is being waited for.
	errExited = errors.New("exited during startup")
	// errPortInUse is returned when a process could not bind its port.
	errPortInUse = errors.New("port in use")
)
