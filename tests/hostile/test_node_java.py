"""Node and Java functions attacking the host: secrets, network, disk, processes left behind."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
import redis

from taskorch.functions import LocalRuntime
from tests.hostile.conftest import (
    LIMITS,
    SECRET,
    build,
    ipc_objects,
    needs_java,
    needs_node,
    needs_root,
    nothing_left,
    processes_of,
    uid_of,
)

pytestmark = needs_root

NODE = r"""
const fs = require('fs');
const net = require('net');
const { spawn } = require('child_process');

function attempt(fn) {
  try { return fn(); } catch (err) { return err.code || String(err); }
}

function connect(host, port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port, timeout: 500 });
    socket.on('connect', () => { socket.destroy(); resolve('connected'); });
    socket.on('error', (err) => resolve(err.code));
    socket.on('timeout', () => { socket.destroy(); resolve('ETIMEDOUT'); });
  });
}

function fill(path) {
  let mb = 0;
  try {
    const fd = fs.openSync(path, 'w');
    const chunk = Buffer.alloc(1024 * 1024, 120);
    while (mb < 512) { fs.writeSync(fd, chunk); mb += 1; }
    return { mb, error: null };
  } catch (err) {
    return { mb, error: err.code };
  }
}

exports.handler = async (event) => {
  const child = spawn('sleep', ['600'], { detached: true, stdio: 'ignore' });
  child.unref();
  const pids = fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name));
  return {
    env: process.env,
    pids,
    host: attempt(() => fs.readFileSync(`/proc/${event.host_pid}/environ`, 'utf8')),
    base: attempt(() => fs.readdirSync(event.base)),
    redis: await connect('127.0.0.1', event.redis_port),
    outside: await connect('1.1.1.1', 80),
    kill: attempt(() => process.kill(event.host_pid, 'SIGKILL')),
    tmp: fill('/tmp/fill'),
    task: fill('index.js'),
  };
};
"""

JAVA = r"""
import java.io.*;
import java.net.*;
import java.nio.file.*;
import java.util.*;

public class Attack {
    static String attempt(Callable c) {
        try { return String.valueOf(c.call()); } catch (Throwable t) { return t.getClass().getSimpleName(); }
    }

    interface Callable { Object call() throws Exception; }

    static Map<String, Object> fill(String path) {
        Map<String, Object> out = new HashMap<>();
        long mb = 0;
        try (OutputStream o = new FileOutputStream(path)) {
            byte[] chunk = new byte[1024 * 1024];
            while (mb < 512) { o.write(chunk); o.flush(); mb++; }
            out.put("error", null);
        } catch (IOException e) {
            out.put("error", e.getMessage());
        }
        out.put("mb", mb);
        return out;
    }

    public Object handle(Map<String, Object> event) throws Exception {
        new ProcessBuilder("sleep", "600").start();
        Map<String, Object> out = new HashMap<>();
        out.put("env", new HashMap<>(System.getenv()));
        List<String> pids = new ArrayList<>();
        for (File f : new File("/proc").listFiles()) {
            if (f.getName().matches("\\d+")) pids.add(f.getName());
        }
        out.put("pids", pids);
        Object hostPid = event.get("host_pid");
        long host = ((Number) hostPid).longValue();
        out.put("host", attempt(() -> new String(Files.readAllBytes(Paths.get("/proc/" + host + "/environ")))));
        out.put("base", attempt(() -> Arrays.toString(new File((String) event.get("base")).list())));
        int redisPort = ((Number) event.get("redis_port")).intValue();
        out.put("redis", attempt(() -> { new Socket("127.0.0.1", redisPort).close(); return "connected"; }));
        out.put("kill", attempt(() -> ProcessHandle.of(host).map(ProcessHandle::destroyForcibly).orElse(false)));
        out.put("tmp", fill("/tmp/fill"));
        out.put("task", fill("Attack.java"));
        return out;
    }
}
"""


def check(result: Any, runtime: str) -> None:
    assert isinstance(result, dict), result
    text = json.dumps(result)
    assert SECRET not in text
    assert not {k for k in result["env"] if k.startswith(("TASKORCH", "AWS"))}
    assert len(result["pids"]) <= 3, result["pids"]  # itself and its own children only
    assert result["host"] in ("ENOENT", "NoSuchFileException")
    assert result["base"] in ("ENOENT", "null")
    assert result["redis"] != "connected" and result.get("outside") != "connected"
    assert result["kill"] in ("ESRCH", "false")
    assert result["tmp"]["mb"] <= LIMITS.disk_mb and result["tmp"]["error"], result["tmp"]
    assert result["task"]["mb"] == 0 and result["task"]["error"], result["task"]


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        pytest.param("node", NODE, marks=needs_node),
        pytest.param("java", JAVA, marks=needs_java),
    ],
)
async def test_attacks_are_contained(
    runtime: str, code: str, rt: LocalRuntime, base_dir: Path, redis_server: Any
) -> None:
    ipc_before = ipc_objects()
    await build(rt, f"fn_{runtime}", runtime, code)
    uid = uid_of(base_dir, f"fn_{runtime}")
    event = {"host_pid": os.getpid(), "base": str(base_dir), "redis_port": redis_server.port}

    result = await rt.invoke(f"fn_{runtime}", event)

    check(result, runtime)
    assert processes_of(uid), "the sleep it started should still run until DELETE"
    await rt.remove(f"fn_{runtime}")
    assert await nothing_left(uid) == [], f"processes of the {runtime} function left (ps)"
    assert ipc_objects() == ipc_before
    assert redis.Redis(port=redis_server.port).ping()
    await asyncio.sleep(0)
