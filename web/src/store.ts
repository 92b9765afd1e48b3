// The client's state in IndexedDB. Private keys are stored as the
// non-extractable CryptoKeys they are (structured clone keeps them usable
// and unreadable); every write that must precede a send commits with
// `durability: "strict"` before the promise resolves (§13.1).

export interface MessageRecord {
  key: string;
  peer: string;
  dir: "in" | "out";
  text: string;
  at: number;
  state?: "sending" | "sent" | "delivered" | "failed" | "interrupted";
  /** Devices (`user:device`) whose receipt is still awaited. */
  awaiting?: string[];
  seq?: string;
  /** The content's floor and seal time, to send it again unchanged (§7.3). */
  floor?: string;
  sentAt?: string;
  /** Shown on the message: an unconfirmed identity, a late arrival. */
  warning?: string;
  late?: boolean;
}

const KV = "kv";
const MESSAGES = "messages";

function promised<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

export class Store {
  private constructor(private readonly db: IDBDatabase) {}

  static open(name: string): Promise<Store> {
    return new Promise((resolve, reject) => {
      const req = indexedDB.open(name, 1);
      req.onupgradeneeded = () => {
        const db = req.result;
        db.createObjectStore(KV);
        const m = db.createObjectStore(MESSAGES, { keyPath: "key" });
        m.createIndex("peer", "peer");
      };
      req.onsuccess = () => resolve(new Store(req.result));
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error("the chat is open in another tab that holds an older version"));
    });
  }

  close(): void {
    this.db.close();
  }

  async get<T>(key: string): Promise<T | undefined> {
    const tx = this.db.transaction(KV, "readonly");
    return (await promised(tx.objectStore(KV).get(key))) as T | undefined;
  }

  async keys(prefix: string): Promise<string[]> {
    const tx = this.db.transaction(KV, "readonly");
    const range = IDBKeyRange.bound(prefix, `${prefix}\uffff`);
    return (await promised(tx.objectStore(KV).getAllKeys(range))) as string[];
  }

  async message(key: string): Promise<MessageRecord | undefined> {
    const tx = this.db.transaction(MESSAGES, "readonly");
    return (await promised(tx.objectStore(MESSAGES).get(key))) as MessageRecord | undefined;
  }

  async messages(peer: string): Promise<MessageRecord[]> {
    const tx = this.db.transaction(MESSAGES, "readonly");
    const all = (await promised(tx.objectStore(MESSAGES).index("peer").getAll(peer))) as MessageRecord[];
    return all.sort((a, b) => a.at - b.at);
  }

  /** Writes state and messages in one transaction, resolved once durable. */
  commit(kv: Array<[string, unknown]>, messages: MessageRecord[] = [], remove: string[] = []): Promise<void> {
    return new Promise((resolve, reject) => {
      const tx = this.db.transaction([KV, MESSAGES], "readwrite", { durability: "strict" });
      const store = tx.objectStore(KV);
      for (const [k, v] of kv) store.put(v, k);
      for (const k of remove) store.delete(k);
      for (const m of messages) tx.objectStore(MESSAGES).put(m);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error ?? new Error("the state could not be saved"));
    });
  }

  /** Deletes everything this client keeps for this server. */
  static wipe(name: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const req = indexedDB.deleteDatabase(name);
      req.onsuccess = () => resolve();
      req.onerror = () => reject(req.error);
      req.onblocked = () => resolve();
    });
  }
}
