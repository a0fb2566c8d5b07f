CREATE TABLE agent_connections (
    agent_id TEXT NOT NULL,
    dispatcher_id TEXT NOT NULL,
    in_flight INTEGER NOT NULL,
    last_heartbeat INTEGER NOT NULL,
    PRIMARY KEY (agent_id, dispatcher_id)
);
