import WebSocket from 'ws';
