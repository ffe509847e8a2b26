#!/usr/bin/env python3
# The paper model of docs/random-release.md: the fragment cache (32 KiB pages kept until their last fragment
# is freed) against a slab (size classes, freed slots reused in place), on pagefrag bench scenario 5's mix.
# Usage: python3 bench/random-release-model.py [window]   (20000 takes about a minute)
import random, math, sys
W=int(sys.argv[1]) if len(sys.argv)>1 else 20000
R=3
mix=[(12,30),(64,40),(576,40),(1500,10),(9000,1)]
rng=random.Random(1)
def draw():
    p=rng.randrange(121)
    for s,w in mix:
        if p<w: return s
        p-=w
def pieces(s):
    out=[]
    while s>0: out.append(min(s,4096)); s-=4096
    return out
def align8(n): return max(8,(n+7)&~7)
def slot(s):
    if s<=256: return (s+15)//16*16
    d=(s-1).bit_length()-1; st=1<<(d-3)
    return (1<<d)+((s-1-(1<<d))//st+1)*st
def order(sz):
    for o in range(4):
        P=4096<<o
        if (P%sz)/P<=1/32: return o
    return min(range(4),key=lambda o:((4096<<o)%sz)/(4096<<o))
# model A: kernel page_frag_cache, 32 KiB pages, page pinned until last fragment freed
class Frag:
    def __init__(s): s.pages={}; s.cur=None; s.off=0; s.n=0
    def alloc(s,n):
        n=align8(n)
        if s.cur is None or s.off+n>32768:
            if s.cur is not None:
                s.pages[s.cur]-=1
                if s.pages[s.cur]==0: del s.pages[s.cur]
            s.n+=1; s.cur=s.n; s.pages[s.cur]=1; s.off=0
        s.off+=n; s.pages[s.cur]+=1; return s.cur
    def free(s,p):
        s.pages[p]-=1
        if s.pages[p]==0: del s.pages[p]
    def kept(s): return 8*4096*len(s.pages)
class Slab:
    def __init__(s): s.cls={}; s.n=0; s.pages=0
    def alloc(s,n):
        sz=slot(n); c=s.cls.setdefault(sz,{'free':[], 'live':{}, 'o':order(sz)})
        P=4096<<c['o']; k=P//sz
        if not c['free']:
            s.n+=1; c['live'][s.n]=0; c['free']+= [s.n]*k; s.pages+=P
        p=c['free'].pop(); c['live'][p]+=1; return (sz,p)
    def free(s,h):
        sz,p=h; c=s.cls[sz]; c['free'].append(p); c['live'][p]-=1
    def kept(s): return s.pages
for name,M in (('frag',Frag),('slab',Slab)):
  for order_ in ('fifo','random'):
    rng=random.Random(1); m=M(); slots=[None]*W; req=[0]*W; held=0; samples=[]
    total=W*(1+R)
    for i in range(total):
        if i<W: j=i
        else:
            j=i%W if order_=='fifo' else rng.randrange(W)
            for h in slots[j]: m.free(h)
            held-=req[j]
        s=draw(); slots[j]=[m.alloc(x) for x in pieces(s)]; req[j]=s; held+=s
        if i>2*W and i%(W//5)==0: samples.append(m.kept()/held)
    samples.sort(); print(name,order_,W,round(samples[len(samples)//2],3))
N=32768/413
H=sum(1/k for k in range(1,int(N)+1))
print('fragments per 32 KiB page ~%.0f, H_N=%.2f'%(N,H))
