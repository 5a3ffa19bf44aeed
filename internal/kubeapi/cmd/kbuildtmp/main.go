package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
)

func main() {
	for _, n := range os.Args[1:] {
		t := time.Now()
		p, err := kubeapi.BuildComponents(context.Background(), n)
		fmt.Println(n, p, err, time.Since(t).Round(time.Second))
	}
}
